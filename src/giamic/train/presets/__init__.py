"""Named configuration presets (YAML); see giamic.train.config."""
