from zr_ablate.bench.cli import main

main()
