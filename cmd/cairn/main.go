// Command cairn is the command-line interface of the cairn backup tool
// (docs: shared/docs/cli.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes (cli.md, "Exit codes").
const (
	exitOK          = 0
	exitFatal       = 1
	exitPartial     = 3
	exitNoRepo      = 10
	exitLocked      = 11
	exitWrongPass   = 12
	exitInterrupted = 130
)

func main() {
	// The working set is bounded (packs and chunks in flight), so a soft limit
	// keeps garbage from doubling the resident size; below it, a collection
	// once the heap has grown by 35%, not doubled, keeps a backup of a few
	// large files lean (one 200 MiB file: 65.5 MiB median peak, against 76.4
	// at 50% and 62.3 at 25%, which cost 20% more wall time) at no
	// measurable CPU cost (the many-file backup runs at the limit anyway).
	// At 72 MiB rather than 80 a night's incremental backup peaks ~8 MiB
	// lower and a first backup spends ~3% of its CPU collecting, not ~2%;
	// at 64, ~4%.
	setMemoryLimit(72 << 20)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(35)
	}
	// One processor more than the cores the worker pools are sized by
	// (snapshot and repo read GOMAXPROCS as the program starts): a worker
	// blocked in the kernel (a read, a pack write, a page fault) keeps its
	// processor until the runtime takes it back, and on two cores that left
	// ~11% of a first backup's CPU time idle; with one more, ~6%.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
	}
	os.Exit(run(os.Args, os.Stderr))
}

// setMemoryLimit sets the runtime's soft memory limit to n bytes unless the
// user chose one with GOMEMLIMIT.
func setMemoryLimit(n int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}

// run executes one command line and returns the exit code; every error is
// reported as one line on stderr.
func run(args []string, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first signal, a second one ends the process at once.
		<-ctx.Done()
		stop()
	}()
	snapshot.ProgramVersion = "cairn " + version

	app := newApp()
	err := app.RunContext(ctx, reorderArgs(app, args))
	code, msg := exitStatus(err, ctx.Err() != nil)
	if code != exitOK {
		fmt.Fprintln(stderr, "cairn: "+msg)
	}
	return code
}

// exitError carries an exit code chosen where the error was made.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError reports bad arguments to a command, with a hint to its help.
func usageError(c *cli.Context, format string, args ...any) error {
	return &exitError{code: exitFatal, err: fmt.Errorf(format+" (run \"%s\")", append(args, helpHint(c))...)}
}

// helpHint names the help of the top-level command c belongs to.
func helpHint(c *cli.Context) string {
	name := ""
	if c != nil {
		for _, l := range c.Lineage() {
			if l.Command != nil && l.Command.Name != "" && l.Command.Name != l.App.Name {
				name = l.Command.Name
			}
		}
	}
	if name == "" {
		return "cairn help"
	}
	return "cairn help " + name
}

// exitStatus maps an error to the process exit code and the line printed
// for it. interrupted says a signal cancelled the run.
func exitStatus(err error, interrupted bool) (int, string) {
	if err == nil {
		return exitOK, ""
	}
	var ee *exitError
	var locked *repo.LockedError
	var coder cli.ExitCoder
	switch {
	case interrupted || errors.Is(err, context.Canceled):
		return exitInterrupted, "interrupted"
	case errors.As(err, &ee):
		return ee.code, oneLine(err)
	case errors.Is(err, repo.ErrNoRepository):
		return exitNoRepo, oneLine(err)
	case errors.As(err, &locked):
		return exitLocked, oneLine(err)
	case errors.Is(err, repo.ErrWrongPassword):
		return exitWrongPass, oneLine(err)
	case errors.Is(err, snapshot.ErrPartial):
		return exitPartial, oneLine(err)
	case errors.As(err, &coder):
		// urfave/cli's own errors (an unknown help topic) use codes of
		// their own that mean other things here.
		return exitFatal, oneLine(err)
	}
	return exitFatal, oneLine(err)
}

// oneLine folds a multi-line error (errors.Join) into one line.
func oneLine(err error) string {
	lines := strings.FieldsFunc(err.Error(), func(r rune) bool { return r == '\n' || r == '\r' })
	if len(lines) == 0 {
		return "unknown error"
	}
	return strings.Join(lines, "; ")
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                      "cairn",
		Usage:                     "deduplicating, encrypted backups",
		HideVersion:               true, // "cairn version"; -v is --verbose
		DisableSliceFlagSeparator: true, // patterns may contain commas
		Flags:                     globalFlags(),
		Commands: []*cli.Command{
			newInitCommand(),
			newBackupCommand(),
			newSnapshotsCommand(),
			newRestoreCommand(),
			newLsCommand(),
			newDiffCommand(),
			newDumpCommand(),
			newKeyCommand(),
			newCatCommand(),
			newForgetCommand(),
			newPruneCommand(),
			newCheckCommand(),
			newRepairCommand(),
			newUnlockCommand(),
			newStatusCommand(),
			newFindCommand(),
			newStatsCommand(),
			newCopyCommand(),
			newVersionCommand(),
		},
		// Errors are printed and mapped by run, never by the library.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   onUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError(c, "unknown command %q", c.Args().First())
			}
			return cli.ShowAppHelp(c)
		},
	}
	for _, cmd := range app.Commands {
		setUsageErrors(cmd)
	}
	return app
}

// onUsageError turns a flag parsing error into one line instead of the
// library's full help text.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageError(c, "%s", strings.TrimSpace(err.Error()))
}

func setUsageErrors(cmd *cli.Command) {
	cmd.OnUsageError = onUsageError
	for _, sub := range cmd.Subcommands {
		setUsageErrors(sub)
	}
}

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, min, max int) error {
	n := c.NArg()
	switch {
	case n < min:
		if min == 1 && max == 1 {
			return usageError(c, "missing argument %s", c.Command.ArgsUsage)
		}
		return usageError(c, "missing arguments: want %s", c.Command.ArgsUsage)
	case max >= 0 && n > max:
		return usageError(c, "too many arguments: want %s", c.Command.ArgsUsage)
	}
	return nil
}
