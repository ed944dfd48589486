"""How the user's data and model are read: batches, ids, loaders, the model's logits and loss."""
