"""What each device runs: installed software per thing, the $package shadow."""
