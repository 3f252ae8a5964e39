module hush.dev/bench/fixedrate

go 1.26
