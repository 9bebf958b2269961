module fluxy.dev/codegen/go

go 1.19
