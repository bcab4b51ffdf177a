"""Authentication methods behind one small interface, and the ocpasswd file."""
