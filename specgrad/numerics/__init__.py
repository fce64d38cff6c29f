"""Array-namespace (`xp`) numerics: input generation, finite differences, comparison."""
