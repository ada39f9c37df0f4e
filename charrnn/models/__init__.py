"""The networks: CharRNN (embedding -> recurrent stack -> head), torch's fused kinds and charrnn's own."""
