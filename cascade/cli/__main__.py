"""`python -m cascade.cli ...`: the same tool as the `cascade` console script."""

from cascade.cli.main import main

# Guarded so that importing the module (as tools that import every module do) runs nothing.
if __name__ == "__main__":
    main()
