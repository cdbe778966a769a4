"""Retry decisions for a failed load: foreign errors' codes, the rules classifier, the AI advisor."""
