"""mmldm test suite."""
