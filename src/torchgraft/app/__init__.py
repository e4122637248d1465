"""The application layer: a run from files to an exported model, export and predict."""
