"""Architecture: base models and presets, the E4T encoder, weight offsets, the composed model."""
