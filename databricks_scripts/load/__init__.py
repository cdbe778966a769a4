"""Engine-neutral load rules: the parameters (``params.LoadSpec``), watermarks, keys, column control,
history rules, type mapping and stopping. Both engines (``engines.arrow``, ``engines.spark``) build
on these; nothing here imports an engine."""
