"""Work units, fingerprints, compilation of a spec into units, the plan and its rendering."""
