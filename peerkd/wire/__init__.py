"""The wire: message and record names (``protocol``), how arrays are packed (``codec``) and
how the server pushes and pulls messages through a Flower ``Grid`` (``grid_io``), and short retries
for message objects not there yet in deployment (``fastpull``)."""
