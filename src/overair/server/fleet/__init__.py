"""Fleet indexing: searching things by registry, shadow and connectivity fields."""
