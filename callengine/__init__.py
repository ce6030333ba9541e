"""callengine."""
