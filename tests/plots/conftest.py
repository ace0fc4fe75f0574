from learning_data import breast_cancer, key_3_of_5, skewed_split  # noqa: F401  (fixtures)
