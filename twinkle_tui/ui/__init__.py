"""All Textual code of twinkle-tui lives here."""
