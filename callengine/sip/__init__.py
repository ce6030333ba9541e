"""callengine/sip."""
