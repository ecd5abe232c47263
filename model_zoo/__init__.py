"""cellzoo's model families, recipes and model cards. Never imports ``runner``."""
