"""The student: models (``models``, ``lm``), losses, local training, what a client exchanges
(``exchange``) and the Flower ClientApp that does it (``client_app``)."""
