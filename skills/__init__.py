"""Bundled agent skills (markdown). Installed as the package twinkle_tui.skills; read with importlib.resources."""
