"""Looking inside a trained network: activations, unit statistics, text features, the HTML viewer."""
