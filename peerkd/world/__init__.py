"""The world: a dataset (``data``, ``text``), its seeded splits, the partition of its private
pool over clients (``partition``), the transfer set (``transfer``), built from one ``WorldSpec``
(``build``)."""
