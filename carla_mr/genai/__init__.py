"""TSDreamBooth: sign data, text-to-image diffusion, DreamBooth, validator and scores."""
