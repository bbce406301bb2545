"""Running the platform on one host: the stack images and the ``make up`` supervisor."""
