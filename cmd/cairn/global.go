package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/repo/local"
	"github.com/cairn-backup/cairn/repo/retry"
	"github.com/cairn-backup/cairn/repo/s3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "repo", Aliases: []string{"r"}, EnvVars: []string{"CAIRN_REPOSITORY"},
			Usage: "repository: a path, `local:PATH` or s3:URL"},
		&cli.StringFlag{Name: "password-file", EnvVars: []string{"CAIRN_PASSWORD_FILE"},
			Usage: "read the repository password from `FILE`"},
		&cli.StringFlag{Name: "password-command", EnvVars: []string{"CAIRN_PASSWORD_COMMAND"},
			Usage: "run `COMMAND` and use its output as the password"},
		&cli.StringFlag{Name: "cache-dir", EnvVars: []string{"CAIRN_CACHE_DIR"},
			Usage: "local cache `DIR` (default: $XDG_CACHE_HOME/cairn or ~/.cache/cairn)"},
		&cli.BoolFlag{Name: "no-cache", Usage: "do not use a local cache"},
		&cli.IntFlag{Name: "connections", Usage: "transfers to the repository at once, `N` (default: 5 for S3, 4 for a local directory; restore: twice the cores, at least 4)"},
		&cli.BoolFlag{Name: "json", Usage: "machine-readable output on stdout"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only errors"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print more"},
	}
}

// location is a parsed repository URL.
type location struct {
	kind string // "local" or "s3"
	path string
	s3   s3.Config
}

// parseLocation reads a --repo value: a plain path, local:PATH or s3:URL.
func parseLocation(s string) (location, error) {
	switch {
	case s == "":
		return location{}, errors.New("no repository given: use -r/--repo or CAIRN_REPOSITORY")
	case strings.HasPrefix(s, "s3:"):
		cfg, err := s3.ParseURL(s)
		if err != nil {
			return location{}, err
		}
		cfg.FromEnv(os.Getenv)
		return location{kind: "s3", s3: cfg}, nil
	case strings.HasPrefix(s, "local:"):
		p := strings.TrimPrefix(s, "local:")
		if p == "" {
			return location{}, fmt.Errorf("invalid repository %q: no path after local:", s)
		}
		return location{kind: "local", path: p}, nil
	}
	return location{kind: "local", path: s}, nil
}

// backend is an opened repository location.
type backend struct {
	repo.Backend // behind the retry wrapper
	// create makes the location ready for init: the directory layout or
	// the bucket.
	create func(context.Context) error
}

// Unwrap lets the pack store find the local backend's directory for packs
// being filled, so that they are linked into place rather than copied.
func (b *backend) Unwrap() repo.Backend { return b.Backend }

// openBackend returns the backend named by --repo. Nothing is contacted yet.
func openBackend(c *cli.Context) (*backend, error) {
	loc, err := parseLocation(c.String("repo"))
	if err != nil {
		return nil, err
	}
	ropts := retry.Options{}
	if c.Bool("verbose") {
		ropts.Notify = func(op string, err error, wait time.Duration) {
			fmt.Fprintf(os.Stderr, "cairn: %s failed, retrying in %s: %v\n", op, wait.Round(time.Millisecond), err)
		}
	}
	switch loc.kind {
	case "s3":
		sb, err := s3.Open(loc.s3)
		if err != nil {
			return nil, err
		}
		create := func(ctx context.Context) error {
			return retry.Do(ctx, ropts, "create bucket", func() error { return sb.Create(ctx) })
		}
		return &backend{Backend: retry.New(countingBackend{sb}, ropts), create: create}, nil
	default:
		lb, err := local.Open(loc.path)
		if err != nil {
			return nil, err
		}
		create := func(context.Context) error { return lb.Create() }
		return &backend{Backend: retry.New(countingBackend{lb}, ropts), create: create}, nil
	}
}

// connections is --connections, or the default for the kind of repository:
// S3 hides latency behind requests at once; on a local disk, packs being
// fsynced must not hold up the next ones (2 left a backup a third idle).
func connections(c *cli.Context) int {
	if n := c.Int("connections"); n > 0 {
		return n
	}
	if loc, err := parseLocation(c.String("repo")); err == nil && loc.kind == "s3" {
		return 5
	}
	return 4
}

// noRepository is the error for a location without a repository.
func noRepository(c *cli.Context) error {
	return &exitError{code: exitNoRepo,
		err: fmt.Errorf("repository %s does not exist; run \"cairn init\" first", c.String("repo"))}
}

var errNoPassword = errors.New("no password given: set CAIRN_PASSWORD, --password-file or --password-command")

// readPassword finds the repository password: --password-file,
// --password-command, CAIRN_PASSWORD, else a prompt on a terminal (twice
// when confirm is set). It never shows the password in an error.
func readPassword(ctx context.Context, c *cli.Context, prompt string, confirm bool) ([]byte, error) {
	return passwordFrom(ctx, c, "", "CAIRN_PASSWORD", prompt, confirm)
}

// passwordFrom reads a password from the flags <flag>password-file and
// <flag>password-command, the variable env, else a prompt on a terminal.
func passwordFrom(ctx context.Context, c *cli.Context, flag, env, prompt string, confirm bool) ([]byte, error) {
	file, command := c.String(flag+"password-file"), c.String(flag+"password-command")
	switch {
	case file != "" && command != "":
		return nil, fmt.Errorf("--%spassword-file and --%spassword-command are mutually exclusive", flag, flag)
	case file != "":
		return passwordFromFile(file)
	case command != "":
		return passwordFromCommand(ctx, command)
	}
	if pw := os.Getenv(env); pw != "" {
		return []byte(pw), nil
	}
	pw, err := promptPassword(prompt, confirm)
	if errors.Is(err, errNoPassword) && flag != "" {
		return nil, fmt.Errorf("no password given: set %s, --%spassword-file or --%spassword-command", env, flag, flag)
	}
	return pw, err
}

// trimNewline drops one trailing line end, as written by echo or an editor.
func trimNewline(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

func passwordFromFile(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read password file: %w", err)
	}
	pw := trimNewline(b)
	if len(pw) == 0 {
		return nil, fmt.Errorf("password file %s is empty", name)
	}
	return pw, nil
}

// passwordFromCommand runs command (split on spaces, no shell) and takes its
// output. Only the program name appears in errors: its arguments might hold
// the secret.
func passwordFromCommand(ctx context.Context, command string) ([]byte, error) {
	args := strings.Fields(command)
	if len(args) == 0 {
		return nil, errors.New("--password-command is empty")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdin, cmd.Stderr = os.Stdin, os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("password command %s: %w", args[0], err)
	}
	pw := trimNewline(out)
	if len(pw) == 0 {
		return nil, fmt.Errorf("password command %s printed no password", args[0])
	}
	return pw, nil
}

func promptPassword(prompt string, confirm bool) ([]byte, error) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, errNoPassword
	}
	read := func(p string) ([]byte, error) {
		fmt.Fprint(os.Stderr, p)
		pw, err := term.ReadPassword(fd)
		fmt.Fprintln(os.Stderr)
		if err != nil {
			return nil, fmt.Errorf("read password: %w", err)
		}
		return pw, nil
	}
	pw, err := read(prompt)
	if err != nil {
		return nil, err
	}
	if len(pw) == 0 {
		return nil, errors.New("empty password")
	}
	if confirm {
		again, err := read("enter the password again: ")
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(pw, again) {
			return nil, errors.New("passwords do not match")
		}
	}
	return pw, nil
}

// openRepo opens the repository named by the global flags.
func openRepo(ctx context.Context, c *cli.Context) (*repo.Repo, error) {
	be, err := openBackend(c)
	if err != nil {
		return nil, err
	}
	return openRepoOn(ctx, c, be, func() ([]byte, error) {
		return readPassword(ctx, c, "enter password for repository: ", false)
	}, func() error { return noRepository(c) })
}

// openRepoOn opens the repository on be, with the cache the flags of c
// choose. It says that nothing is there (noRepo) before it asks for a
// password; be is closed when it fails.
func openRepoOn(ctx context.Context, c *cli.Context, be repo.Backend, password func() ([]byte, error), noRepo func() error) (r *repo.Repo, err error) {
	defer func() {
		if err != nil {
			be.Close()
		}
	}()
	if _, err := be.Stat(ctx, repo.Handle{Type: repo.ConfigFile}); errors.Is(err, repo.ErrNotFound) {
		return nil, noRepo()
	} else if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", be.Location(), err)
	}
	pw, err := password()
	if err != nil {
		return nil, err
	}
	r, err = repo.Open(ctx, be, pw)
	if errors.Is(err, repo.ErrNoRepository) {
		return nil, noRepo()
	}
	if err != nil {
		return nil, err
	}
	if dir := cacheDir(c); dir != "" {
		r.SetCache(repo.NewFileCache(filepath.Join(dir, r.Config().ID.String())))
	}
	return r, nil
}

// cacheDir is where the index cache lives; "" runs without one.
func cacheDir(c *cli.Context) string {
	if c.Bool("no-cache") {
		return ""
	}
	if d := c.String("cache-dir"); d != "" {
		return d
	}
	d, err := os.UserCacheDir() // $XDG_CACHE_HOME or ~/.cache
	if err != nil {
		return ""
	}
	return filepath.Join(d, "cairn")
}

// withRepo opens the repository and runs fn.
func withRepo(c *cli.Context, fn func(ctx context.Context, r *repo.Repo) error) error {
	r, err := openRepo(c.Context, c)
	if err != nil {
		return err
	}
	defer r.Close()
	return fn(c.Context, r)
}

// withStore opens the repository and its index and runs fn, holding a shared
// lock when lock is set (so that nothing fn reads is pruned meanwhile).
func withStore(c *cli.Context, lock bool, fn func(ctx context.Context, r *repo.Repo, store *pack.Store) error) error {
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		run := func(ctx context.Context) error {
			idx, err := index.Load(ctx, r, index.Options{CacheDir: cacheDir(c)})
			if err != nil {
				return fmt.Errorf("load index: %w", err)
			}
			defer idx.Close()
			store := pack.NewStore(r, idx)
			store.SetConnections(connections(c))
			return fn(ctx, r, store)
		}
		if !lock {
			return run(ctx)
		}
		return r.WithLock(ctx, false, run)
	})
}

var timeLayoutsWithZone = []string{
	time.RFC3339Nano,
	"2006-01-02 15:04:05Z07:00",
	"2006-01-02 15:04:05 Z07:00",
	"2006-01-02 15:04:05 -0700",
	"2006-01-02 15:04:05 MST",
}

var timeLayoutsLocal = []string{
	"2006-01-02 15:04:05",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04",
}

// parseTime reads a time given on the command line: "YYYY-MM-DD HH:MM:SS"
// in the local time zone unless it carries an offset, or RFC 3339.
func parseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	for _, l := range timeLayoutsWithZone {
		if t, err := time.Parse(l, s); err == nil {
			// "MST" accepts any abbreviation and invents a zero offset for
			// unknown ones: only UTC is unambiguous.
			if l == "2006-01-02 15:04:05 MST" && !strings.HasSuffix(s, " UTC") {
				continue
			}
			return t, nil
		}
	}
	for _, l := range timeLayoutsLocal {
		if t, err := time.ParseInLocation(l, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("invalid time %q: want \"YYYY-MM-DD HH:MM:SS\" (local time) or RFC 3339", s)
}
