package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagSet knows which flag names exist and which of them take a value.
type flagSet map[string]bool // name -> takes a value

func newFlagSet(flags []cli.Flag) flagSet {
	fs := flagSet{"h": false, "help": false}
	for _, f := range flags {
		takes := true
		if tv, ok := f.(interface{ TakesValue() bool }); ok {
			takes = tv.TakesValue()
		}
		for _, n := range f.Names() {
			fs[n] = takes
		}
	}
	return fs
}

func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

// flagName returns the name in "-n", "--name" or "--name=value", and
// whether the value is attached.
func flagName(a string) (string, bool) {
	name := strings.TrimLeft(a, "-")
	if i := strings.IndexByte(name, '='); i >= 0 {
		return name[:i], true
	}
	return name, false
}

// reorderArgs moves flags ahead of positional arguments, and global flags
// ahead of the command, so that "cairn restore latest --target DIR" and
// "cairn ls ID --json" work: the flag parser stops at the first positional
// argument. Everything after "--" stays positional, in order.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	global := newFlagSet(app.Flags)
	var globals []string
	i := 1
	take := func(dst *[]string, fs flagSet) {
		a := args[i]
		*dst = append(*dst, a)
		name, attached := flagName(a)
		if fs[name] && !attached && i+1 < len(args) {
			i++
			*dst = append(*dst, args[i])
		}
	}
	for ; i < len(args) && isFlag(args[i]); i++ {
		take(&globals, global)
	}
	if i >= len(args) || args[i] == "--" {
		return args
	}
	cmd := app.Command(args[i])
	if cmd == nil {
		return args
	}
	head := []string{args[i]}
	i++
	// Descend into subcommands ("key add"), which come before any flag of theirs.
	for len(cmd.Subcommands) > 0 && i < len(args) {
		sub := cmd.Command(args[i])
		if sub == nil {
			break
		}
		cmd = sub
		head = append(head, args[i])
		i++
	}
	local := newFlagSet(cmd.Flags)
	var flags, positional []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if !isFlag(a) {
			positional = append(positional, a)
			continue
		}
		name, _ := flagName(a)
		if _, ok := local[name]; !ok {
			if _, ok := global[name]; ok {
				take(&globals, global)
				continue
			}
		}
		take(&flags, local) // unknown flags too: the parser reports them
	}
	out := make([]string, 0, len(args)+1)
	out = append(out, args[0])
	out = append(out, globals...)
	out = append(out, head...)
	out = append(out, flags...)
	if len(positional) > 0 {
		out = append(out, "--")
		out = append(out, positional...)
	}
	return out
}
