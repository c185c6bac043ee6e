"""vqgpt: a VQ-GAN tokenizer and a GPT over its codes."""
