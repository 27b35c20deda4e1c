"""Built-in scheduling plugins, one per module; each registers itself with @register_plugin."""
