package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newBackupCommand() *cli.Command {
	return &cli.Command{
		Name:      "backup",
		Usage:     "save files, standard input or a command's output as a new snapshot",
		ArgsUsage: "PATH... | --stdin | --stdin-from-command -- CMD [ARGS...] | --config FILE",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "exclude", Aliases: []string{"e"}, Usage: "exclude entries matching `GLOB` (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude-file", Usage: "read exclude patterns from `FILE` (repeatable)"},
			&cli.StringSliceFlag{Name: "iexclude", Usage: "like --exclude, ignoring case (repeatable)"},
			&cli.BoolFlag{Name: "one-file-system", Aliases: []string{"x"}, Usage: "do not cross filesystem boundaries"},
			&cli.BoolFlag{Name: "stdin", Usage: "save standard input as one file"},
			&cli.StringFlag{Name: "stdin-filename", Usage: "file `NAME` for --stdin (default \"stdin\") or --stdin-from-command (default: the command's name)"},
			&cli.BoolFlag{Name: "stdin-from-command", Usage: "save the output of the command after -- as one file"},
			&cli.StringSliceFlag{Name: "tag", Usage: "tag the snapshot with `T[,T...]` (repeatable)"},
			&cli.StringFlag{Name: "host", Aliases: []string{"H"}, Usage: "record `HOST` as the hostname (default: this host's name)"},
			&cli.StringFlag{Name: "time", Usage: "the snapshot's `TIME`, \"YYYY-MM-DD HH:MM:SS\" (default: now)"},
			&cli.StringFlag{Name: "parent", Usage: "compare against snapshot `ID` (default: the latest of the same host, cluster, component and paths)"},
			&cli.BoolFlag{Name: "force", Usage: "read every file, even the unchanged ones"},
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "read everything, store nothing"},
			&cli.StringFlag{Name: "cluster", Usage: "record cluster `NAME`"},
			&cli.StringSliceFlag{Name: "component", Usage: "record component `NAME`; with --config, back up the components matching `GLOB` (repeatable)"},
			&cli.StringFlag{Name: "config", Usage: "back up the components of the cluster file `FILE` as one run"},
			&cli.StringFlag{Name: "run", Usage: "with --config: join run `RUN_ID`, creating it if it does not exist (default: a new run)"},
			&cli.StringFlag{Name: "node", Usage: "with --config: this node's `NAME`, which selects its components and is their snapshots' host (default: --host, else the hostname)"},
		},
		Action: runBackup,
	}
}

// backupSummary is the last stdout line of a backup with --json.
type backupSummary struct {
	MessageType string  `json:"message_type"`
	SnapshotID  *string `json:"snapshot_id"`
	DryRun      bool    `json:"dry_run,omitempty"`
	*snapshot.Summary
	// What the run moved to and from the repository, metadata included:
	// on S3, the transfer the provider bills.
	RepositoryBytesRead    int64 `json:"repository_bytes_read"`
	RepositoryBytesWritten int64 `json:"repository_bytes_written"`
}

func runBackup(c *cli.Context) error {
	if c.IsSet("config") {
		return runClusterBackup(c)
	}
	for _, f := range []string{"run", "node"} {
		if c.IsSet(f) {
			return usageError(c, "--%s needs --config", f)
		}
	}
	out := newOutput(c)
	opts, err := backupOptions(c)
	if err != nil {
		return err
	}
	var src *commandSource
	switch {
	case c.Bool("stdin"):
		opts.Stdin = os.Stdin
		opts.StdinName = c.String("stdin-filename")
		if opts.StdinName == "" {
			opts.StdinName = "stdin"
		}
	case c.Bool("stdin-from-command"):
		// Started only once the repository is open: a wrong password must
		// not leave a half-run command behind.
		opts.StdinName = c.String("stdin-filename")
		if opts.StdinName == "" {
			opts.StdinName = filepath.Base(c.Args().First())
		}
	}
	if opts.Stdin != nil || c.Bool("stdin-from-command") {
		opts.Paths = []string{"/" + opts.StdinName}
	}

	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		if err := chooseParent(ctx, c, r, &opts); err != nil {
			return err
		}
		if opts.Parent != nil {
			out.Verbosef("using parent snapshot %s\n", opts.Parent.ID.Short())
		}
		if c.Bool("stdin-from-command") {
			if src, err = startCommand(ctx, c.Args().Slice()); err != nil {
				return err
			}
			defer src.stop()
			opts.Stdin = src
		}
		rep := out.reporter("read")
		opts.Reporter = rep
		if src != nil {
			// The command's output is the only entry: its failure is the
			// one line the backup ends with.
			opts.Reporter = commandReporter{rep}
		}
		sn, err := snapshot.Backup(ctx, store, opts)
		rep.Done()
		if src != nil && src.failed() != nil {
			// The command's failure, not the empty read it caused.
			return fmt.Errorf("%w; no snapshot saved", src.failed())
		}
		if sn == nil {
			if errors.Is(err, snapshot.ErrNoPaths) {
				return fmt.Errorf("%w; no snapshot saved", err)
			}
			return err
		}
		if perr := printBackupSummary(out, sn, opts.DryRun); perr != nil {
			return perr
		}
		if errors.Is(err, snapshot.ErrPartial) {
			what := "snapshot " + sn.ID.Short() + " saved"
			if opts.DryRun {
				what = "dry run finished"
			}
			return &exitError{code: exitPartial,
				err: fmt.Errorf("%s, but %d entries could not be read", what, sn.Summary.Errors)}
		}
		return err
	})
}

// backupOptions reads the command line into BackupOptions (without the
// parent and the stdin reader, which need the repository or a process).
func backupOptions(c *cli.Context) (snapshot.BackupOptions, error) {
	stdin, fromCmd := c.Bool("stdin"), c.Bool("stdin-from-command")
	switch {
	case stdin && fromCmd:
		return snapshot.BackupOptions{}, usageError(c, "--stdin and --stdin-from-command are mutually exclusive")
	case stdin && c.NArg() > 0:
		return snapshot.BackupOptions{}, usageError(c, "--stdin takes no paths")
	case fromCmd && c.NArg() == 0:
		return snapshot.BackupOptions{}, usageError(c, "--stdin-from-command needs a command after --")
	case !stdin && !fromCmd && c.NArg() == 0:
		return snapshot.BackupOptions{}, usageError(c, "no paths given: cairn backup PATH...")
	case !stdin && !fromCmd && c.IsSet("stdin-filename"):
		return snapshot.BackupOptions{}, usageError(c, "--stdin-filename needs --stdin or --stdin-from-command")
	}
	if len(c.StringSlice("component")) > 1 {
		return snapshot.BackupOptions{}, usageError(c, "one --component names the snapshot's component; several select components only with --config")
	}
	opts := snapshot.BackupOptions{
		Excludes: c.StringSlice("exclude"), IExcludes: c.StringSlice("iexclude"),
		OneFileSystem: c.Bool("one-file-system"), Force: c.Bool("force"), DryRun: c.Bool("dry-run"),
		Hostname: c.String("host"), Cluster: c.String("cluster"),
	}
	if comps := c.StringSlice("component"); len(comps) == 1 {
		opts.Component = comps[0]
	}
	for _, f := range c.StringSlice("exclude-file") {
		patterns, err := snapshot.ReadPatternFile(f)
		if err != nil {
			return opts, fmt.Errorf("--exclude-file: %w", err)
		}
		opts.Excludes = append(opts.Excludes, patterns...)
	}
	opts.Tags = readTags(c)
	if opts.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return opts, fmt.Errorf("hostname: %w (give --host)", err)
		}
		opts.Hostname = h
	}
	if s := c.String("time"); s != "" {
		t, err := parseTime(s)
		if err != nil {
			return opts, fmt.Errorf("--time: %w", err)
		}
		opts.Time = t
	}
	if !stdin && !fromCmd {
		for _, p := range c.Args().Slice() {
			abs, err := filepath.Abs(p)
			if err != nil {
				return opts, fmt.Errorf("path %s: %w", p, err)
			}
			opts.Paths = append(opts.Paths, abs)
		}
	}
	return opts, nil
}

// readTags returns the --tag values, split at commas, without duplicates.
func readTags(c *cli.Context) []string {
	var tags []string
	for _, t := range c.StringSlice("tag") {
		for _, t := range strings.Split(t, ",") {
			if t = strings.TrimSpace(t); t != "" && !slices.Contains(tags, t) {
				tags = append(tags, t)
			}
		}
	}
	return tags
}

// runClusterBackup is backup --config: this node's components of the
// cluster file, as one run (cluster.md).
func runClusterBackup(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError(c, "--config takes no paths: the cluster file names what to back up")
	}
	for _, f := range []string{"stdin", "stdin-from-command", "stdin-filename", "exclude", "exclude-file", "iexclude",
		"one-file-system", "parent", "cluster", "dry-run"} {
		if c.IsSet(f) {
			return usageError(c, "--%s does not go with --config: the cluster file says what each component is", f)
		}
	}
	cfg, err := cluster.Load(c.String("config"))
	if err != nil {
		return err
	}
	runID := c.String("run")
	if runID != "" {
		if err := cluster.CheckRunID(runID); err != nil {
			return err
		}
	}
	node := c.String("node")
	if node == "" {
		node = c.String("host")
	}
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return fmt.Errorf("hostname: %w (give --node)", err)
		}
	}
	comps, err := cfg.Select(node, c.StringSlice("component"))
	if err != nil {
		return err
	}
	var when time.Time
	if s := c.String("time"); s != "" {
		if when, err = parseTime(s); err != nil {
			return fmt.Errorf("--time: %w", err)
		}
	}
	if err := useClusterRepository(c, cfg); err != nil {
		return err
	}

	out := newOutput(c)
	return withStore(c, true, func(ctx context.Context, r *repo.Repo, store *pack.Store) error {
		res, err := cluster.Backup(ctx, store, cluster.BackupOptions{
			Config: cfg, Components: comps, Node: node, Run: runID,
			Tags: readTags(c), Time: when, Force: c.Bool("force"),
			Log:      os.Stderr,
			Reporter: func(*cluster.Component) snapshot.Reporter { return out.reporter("read") },
			Unreadable: func(_ repo.ID, err error) {
				fmt.Fprintf(os.Stderr, "cairn: warning: left out, as it cannot be read: %s\n", oneLine(err))
			},
		})
		if res != nil && res.Run != nil {
			if out.json {
				j := toRunJSON(res.Run)
				j.MessageType = "summary"
				if perr := out.JSON(j); perr != nil && err == nil {
					err = perr
				}
			} else if !out.quiet {
				out.Printf("\n")
				printRun(out, res.Run)
			}
		}
		if err != nil || res == nil {
			return err
		}
		var failed []string
		for _, cr := range res.Components {
			if cr.Err != nil {
				failed = append(failed, fmt.Sprintf("%s: %s", cr.Component.Name, oneLine(cr.Err)))
			}
		}
		switch {
		case len(failed) == 1:
			return fmt.Errorf("run %s: component %s", res.RunID, failed[0])
		case len(failed) > 1:
			return fmt.Errorf("run %s: %d components failed: %s", res.RunID, len(failed), strings.Join(failed, "; "))
		case res.Partial():
			return &exitError{code: exitPartial,
				err: fmt.Errorf("run %s: snapshots saved, but some entries could not be read", res.RunID)}
		}
		return nil
	})
}

// useClusterRepository takes the repository and its password from the
// cluster file, unless the command line or the environment gives them.
func useClusterRepository(c *cli.Context, cfg *cluster.Config) error {
	if c.String("repo") == "" && cfg.Repository != "" {
		if err := c.Set("repo", cfg.Repository); err != nil {
			return err
		}
	}
	if c.String("password-file") != "" || c.String("password-command") != "" || os.Getenv("CAIRN_PASSWORD") != "" {
		return nil
	}
	if cfg.PasswordFile != "" {
		return c.Set("password-file", cfg.PasswordFile)
	}
	pw, ok, err := cfg.Password()
	if err != nil || !ok {
		return err
	}
	// The file names a variable already in the environment: passing the
	// value on under cairn's own name shows it to no one new.
	return os.Setenv("CAIRN_PASSWORD", string(pw))
}

// chooseParent sets opts.Parent: --parent, else the latest snapshot of the
// same host, cluster, component and set of paths.
func chooseParent(ctx context.Context, c *cli.Context, r *repo.Repo, opts *snapshot.BackupOptions) error {
	if ref := c.String("parent"); ref != "" {
		sn, err := findSnapshot(ctx, r, ref, snapshot.Filter{})
		if err != nil {
			return fmt.Errorf("--parent: %w", err)
		}
		opts.Parent = sn
		return nil
	}
	list, err := snapshot.List(ctx, r, warnUnreadable)
	if err != nil {
		return err
	}
	want := normPaths(opts.Paths)
	for i := len(list) - 1; i >= 0; i-- {
		sn := list[i]
		if sn.Hostname == opts.Hostname && sn.Cluster == opts.Cluster && sn.Component == opts.Component &&
			slices.Equal(normPaths(sn.Paths), want) {
			opts.Parent = sn
			return nil
		}
	}
	return nil
}

// normPaths returns paths cleaned, sorted and without duplicates.
func normPaths(paths []string) []string {
	out := make([]string, 0, len(paths))
	for _, p := range paths {
		out = append(out, filepath.Clean(p))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func printBackupSummary(out *output, sn *snapshot.Snapshot, dryRun bool) error {
	s := sn.Summary
	if s == nil {
		s = &snapshot.Summary{}
	}
	if out.json {
		m := backupSummary{MessageType: "summary", DryRun: dryRun, Summary: s,
			RepositoryBytesRead: traffic.read.Load(), RepositoryBytesWritten: traffic.written.Load()}
		if !dryRun {
			id := sn.ID.String()
			m.SnapshotID = &id
		}
		return out.JSON(m)
	}
	out.Printf("Files:       %6d new, %6d changed, %6d unmodified\n", s.FilesNew, s.FilesChanged, s.FilesUnmodified)
	out.Printf("Dirs:        %6d new, %6d changed, %6d unmodified\n", s.DirsNew, s.DirsChanged, s.DirsUnmodified)
	verb := "Added to the repository"
	if dryRun {
		verb = "Would add to the repository"
	}
	out.Printf("%s: %s (%s stored)\n\n", verb, formatBytes(s.DataAdded), formatBytes(s.DataAddedPacked))
	out.Printf("processed %d files, %s in %s\n", s.TotalFilesProcessed, formatBytes(s.TotalBytesProcessed),
		formatDuration(time.Duration(s.DurationSeconds*float64(time.Second))))
	out.Verbosef("repository traffic: %s read, %s written\n", formatBytes(traffic.read.Load()), formatBytes(traffic.written.Load()))
	if dryRun {
		out.Printf("dry run: no snapshot saved\n")
	} else {
		out.Printf("snapshot %s saved\n", sn.ID.Short())
	}
	return nil
}

// commandReporter passes on progress but not the read error of the one
// entry of a --stdin-from-command backup, which the final error states.
type commandReporter struct{ *reporter }

func (commandReporter) Error(string, error) {}

// commandSource is the stdout of a command being backed up. At the end of
// its output it waits for the command, and a failed command turns the end
// into an error, so that the backup fails before it saves a snapshot.
type commandSource struct {
	ctx  context.Context
	name string
	cmd  *exec.Cmd
	pipe io.ReadCloser

	eof  bool // the output ended and the command was waited for
	once sync.Once
	err  error // the command's failure, set by wait
}

func startCommand(ctx context.Context, args []string) (*commandSource, error) {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("command %s: %w", args[0], err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start command %s: %w", args[0], err)
	}
	return &commandSource{ctx: ctx, name: args[0], cmd: cmd, pipe: pipe}, nil
}

func (s *commandSource) Read(p []byte) (int, error) {
	if s.eof {
		return 0, s.endErr()
	}
	n, err := s.pipe.Read(p)
	if err == io.EOF {
		// Wait closes the pipe: later reads must not touch it.
		s.eof = true
		s.wait()
		return n, s.endErr()
	}
	return n, err
}

func (s *commandSource) endErr() error {
	if s.err != nil {
		return s.err
	}
	return io.EOF
}

func (s *commandSource) wait() {
	s.once.Do(func() {
		if err := s.cmd.Wait(); err != nil {
			s.err = fmt.Errorf("command %s failed: %w", s.name, err)
			if cerr := s.ctx.Err(); cerr != nil {
				s.err = cerr // killed because the backup was interrupted
			}
		}
	})
}

func (s *commandSource) failed() error {
	return s.err
}

// stop ends a command whose output was not read to the end.
func (s *commandSource) stop() {
	s.once.Do(func() {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	})
}
