"""dgm_edu: the library of a notebook-first textbook on deep generative models.

Import what you need from its modules (``from dgm_edu.vae import VAE``); importing the package
itself does nothing else.
"""

__version__ = "0.2.0"
