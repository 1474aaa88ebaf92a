"""The networks: the decoder-only GPT (`gpt`) and the classification head (`heads`); they know nothing of data,
training or files."""
