"""Training, export and evaluation of the localization model (torch is imported only by network, train, export)."""
