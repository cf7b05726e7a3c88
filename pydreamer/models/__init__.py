"""DreamerV2 model parts: encoders, decoders, RSSM, world model, actor-critic, and Dreamer."""
