-- Orders and revenue per customer country, from the two loaded demo tables.
select
    c.country,
    count(*)      as orders,
    sum(o.amount) as revenue
from {{ source('demo_lake', 'orders') }} as o
join {{ source('demo_lake', 'customers') }} as c using (customer_id)
group by c.country
