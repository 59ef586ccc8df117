"""Audio edges: devices, files (WAV read/write with resampling) and playback."""
