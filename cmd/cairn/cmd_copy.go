package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/cairn-backup/cairn/cluster"
	"github.com/cairn-backup/cairn/index"
	"github.com/cairn-backup/cairn/pack"
	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
)

func newCopyCommand() *cli.Command {
	return &cli.Command{
		Name:  "copy",
		Usage: "copy snapshots from another repository into this one",
		Description: `Copies the snapshots named by ID (ids of the source repository, or
"latest" with the filters), or every snapshot of the source that passes the
filters, into the repository given by --repo. A snapshot copied before (this
repository has it, or a copy of it) is skipped. Only blobs this repository
lacks are stored, encrypted with its key; the copies keep their time, host,
paths, tags, cluster, component and run, and record the source snapshot's id
as "original". The records of the copied snapshots' cluster runs are
copied too, naming the copies, so that a run can be restored by its id here.

The source repository's password comes from --from-password-file,
--from-password-command or CAIRN_FROM_PASSWORD, else a prompt.`,
		ArgsUsage: "[ID...]",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "from-repo", EnvVars: []string{"CAIRN_FROM_REPOSITORY"},
				Usage: "copy from repository `URL` (a path, local:PATH or s3:URL)"},
			&cli.StringFlag{Name: "from-password-file", EnvVars: []string{"CAIRN_FROM_PASSWORD_FILE"},
				Usage: "read the source repository's password from `FILE`"},
			&cli.StringFlag{Name: "from-password-command", EnvVars: []string{"CAIRN_FROM_PASSWORD_COMMAND"},
				Usage: "run `COMMAND` and use its output as the source repository's password"},
		}, filterFlags()...),
		Action: runCopy,
	}
}

// copySummary is the last line of copy --json.
type copySummary struct {
	MessageType      string  `json:"message_type"`
	SnapshotsCopied  int     `json:"snapshots_copied"`
	SnapshotsSkipped int     `json:"snapshots_skipped"`
	DataBlobs        int     `json:"data_blobs"`
	TreeBlobs        int     `json:"tree_blobs"`
	DataAdded        int64   `json:"data_added"`
	DataAddedPacked  int64   `json:"data_added_packed"`
	DataRead         int64   `json:"data_read"` // plaintext of the data blobs read from the source
	RunRecords       int     `json:"run_records_copied"`
	DurationSeconds  float64 `json:"duration_seconds"`
}

// copiedJSON reports one copied snapshot with --json.
type copiedJSON struct {
	MessageType string `json:"message_type"`
	Source      string `json:"source"`
	SnapshotID  string `json:"snapshot_id"`
}

func runCopy(c *cli.Context) error {
	if c.String("from-repo") == "" {
		return usageError(c, "--from-repo is required: the repository to copy from")
	}
	f, err := readFilter(c)
	if err != nil {
		return err
	}
	out := newOutput(c)
	sc := sourceContext(c)
	src, err := openSource(c.Context, c, sc)
	if err != nil {
		return err
	}
	defer src.Close()
	// Both repositories only gain files: shared locks on both.
	return withStore(c, true, func(ctx context.Context, dst *repo.Repo, dstStore *pack.Store) error {
		if src.Config().ID == dst.Config().ID {
			return errors.New("the source and the destination are the same repository")
		}
		err := src.WithLock(ctx, false, func(ctx context.Context) error {
			idx, err := index.Load(ctx, src, index.Options{CacheDir: cacheDir(c)})
			if err != nil {
				return fmt.Errorf("load index of the source repository: %w", err)
			}
			defer idx.Close()
			srcStore := pack.NewStore(src, idx)
			srcStore.SetConnections(connections(sc))
			cp := &copyRun{out: out, src: src, dst: dst, srcStore: srcStore, dstStore: dstStore,
				workers: connections(sc)}
			return cp.run(ctx, c.Args().Slice(), f)
		})
		var locked *repo.LockedError
		if errors.As(err, &locked) {
			return fmt.Errorf("source repository: %w", err)
		}
		return err
	})
}

// sourceContext is c with --repo set to --from-repo, so that the source is
// opened the way --repo is, with the same cache and connection flags.
func sourceContext(c *cli.Context) *cli.Context {
	set := flag.NewFlagSet("source", flag.ContinueOnError)
	set.String("repo", c.String("from-repo"), "")
	set.Bool("verbose", c.Bool("verbose"), "")
	set.Int("connections", c.Int("connections"), "")
	set.String("cache-dir", c.String("cache-dir"), "")
	set.Bool("no-cache", c.Bool("no-cache"), "")
	return cli.NewContext(c.App, set, nil)
}

// openSource opens the repository named by --from-repo, as openRepo opens
// --repo but with the --from-* password sources.
func openSource(ctx context.Context, c, sc *cli.Context) (*repo.Repo, error) {
	url := sc.String("repo")
	be, err := openBackend(sc)
	if err != nil {
		return nil, fmt.Errorf("source repository: %w", err)
	}
	r, err := openRepoOn(ctx, sc, be, func() ([]byte, error) {
		return passwordFrom(ctx, c, "from-", "CAIRN_FROM_PASSWORD", "enter password for the source repository: ", false)
	}, func() error {
		return &exitError{code: exitNoRepo, err: fmt.Errorf("source repository %s does not exist", url)}
	})
	if err != nil && !errors.As(err, new(*exitError)) {
		return nil, fmt.Errorf("source repository %s: %w", url, err)
	}
	return r, err
}

// copyRun is one cairn copy between two open repositories.
type copyRun struct {
	out                *output
	src, dst           *repo.Repo
	srcStore, dstStore *pack.Store
	workers            int
}

func (cp *copyRun) run(ctx context.Context, refs []string, f snapshot.Filter) error {
	start := time.Now()
	all, err := snapshot.List(ctx, cp.src, warnUnreadable)
	if err != nil {
		return fmt.Errorf("source repository: %w", err)
	}
	var chosen []*snapshot.Snapshot
	if len(refs) == 0 {
		for _, sn := range all {
			if f.Match(sn) {
				chosen = append(chosen, sn)
			}
		}
	} else if chosen, err = selectSnapshots(ctx, cp.src, refs, f); err != nil {
		return fmt.Errorf("source repository: %w", err)
	}
	existing, err := snapshot.List(ctx, cp.dst, warnUnreadable)
	if err != nil {
		return err
	}
	// A snapshot is in the destination when one there has its original id.
	present := map[repo.ID]*snapshot.Snapshot{}
	for _, sn := range existing {
		present[snapshot.OriginalID(sn)] = sn
	}
	sum := copySummary{MessageType: "summary"}
	var todo []*snapshot.Snapshot
	for _, sn := range chosen {
		if d, ok := present[snapshot.OriginalID(sn)]; ok {
			sum.SnapshotsSkipped++
			cp.out.Verbosef("snapshot %s is in the destination already, as %s\n", sn.ID.Short(), d.ID.Short())
			continue
		}
		todo = append(todo, sn)
	}

	copier := snapshot.NewCopier(cp.srcStore, cp.dstStore, cp.workers)
	if len(todo) > 0 {
		// What earlier copies stored need not be read again.
		bySource := map[repo.ID]*snapshot.Snapshot{}
		for _, sn := range all {
			bySource[snapshot.OriginalID(sn)] = sn
		}
		for _, d := range existing {
			if s, ok := bySource[snapshot.OriginalID(d)]; ok {
				if err := copier.Learn(ctx, s.Tree, d.Tree); err != nil {
					return err
				}
			}
		}
	}
	srcByID := map[repo.ID]*snapshot.Snapshot{}
	for _, sn := range all {
		srcByID[sn.ID] = sn
	}

	before := cp.dstStore.Stats()
	for _, sn := range todo {
		copied, err := cp.copySnapshot(ctx, copier, sn, srcByID, present)
		if err != nil {
			return err
		}
		present[snapshot.OriginalID(sn)] = copied
		sum.SnapshotsCopied++
		if cp.out.json {
			if err := cp.out.JSON(copiedJSON{"snapshot", sn.ID.String(), copied.ID.String()}); err != nil {
				return err
			}
		}
		cp.out.Printf("snapshot %s of %v at %s copied as %s\n", sn.ID.Short(), sn.Paths, localTime(sn.Time), copied.ID.Short())
	}
	// The chosen snapshots' runs follow them, so that a cluster run can be
	// listed and restored by its id here too.
	var runs []string
	for _, sn := range chosen {
		runs = append(runs, sn.Run)
	}
	copyOf := func(id string) (string, bool) {
		sid, err := repo.ParseID(id)
		if err != nil {
			return "", false
		}
		if sn, ok := srcByID[sid]; ok {
			if d, ok := present[snapshot.OriginalID(sn)]; ok {
				return d.ID.String(), true
			}
		}
		return "", false
	}
	if sum.RunRecords, err = cluster.CopyRuns(ctx, cp.src, cp.dst, runs, copyOf, warnUnreadableRun); err != nil {
		return err
	}
	after := cp.dstStore.Stats()
	sum.DataBlobs = after.Blobs[repo.DataBlob] - before.Blobs[repo.DataBlob]
	sum.TreeBlobs = after.Blobs[repo.TreeBlob] - before.Blobs[repo.TreeBlob]
	for _, t := range []repo.BlobType{repo.DataBlob, repo.TreeBlob} {
		sum.DataAdded += after.RawBytes[t] - before.RawBytes[t]
		sum.DataAddedPacked += after.PackedSize[t] - before.PackedSize[t]
	}
	sum.DataRead = copier.Progress().Bytes
	sum.DurationSeconds = time.Since(start).Seconds()
	if cp.out.json {
		return cp.out.JSON(sum)
	}
	cp.out.Printf("%d %s copied, %d already in the destination; %d data and %d tree blobs added (%s)\n",
		sum.SnapshotsCopied, plural(sum.SnapshotsCopied, "snapshot", "snapshots"), sum.SnapshotsSkipped,
		sum.DataBlobs, sum.TreeBlobs, formatBytes(sum.DataAddedPacked))
	if sum.RunRecords > 0 {
		cp.out.Printf("%d run %s copied\n", sum.RunRecords, plural(sum.RunRecords, "record", "records"))
	}
	return nil
}

// copySnapshot stores sn's blobs in the destination, then the snapshot,
// which therefore never names a blob that is not durable.
func (cp *copyRun) copySnapshot(ctx context.Context, copier *snapshot.Copier, sn *snapshot.Snapshot,
	srcByID map[repo.ID]*snapshot.Snapshot, present map[repo.ID]*snapshot.Snapshot) (*snapshot.Snapshot, error) {
	stop := cp.showProgress(copier, sn)
	var tree repo.ID
	err := cp.dstStore.WithUploader(ctx, pack.Options{}, func(ctx context.Context) error {
		var err error
		tree, err = copier.CopyTree(ctx, sn.Tree)
		return err
	})
	stop()
	if err != nil {
		return nil, fmt.Errorf("copy snapshot %s: %w", sn.ID.Short(), err)
	}
	cs := *sn
	cs.Tree = tree
	orig := snapshot.OriginalID(sn)
	cs.Original = &orig
	// The parent is named by its copy here, if it has one.
	cs.Parent = nil
	if sn.Parent != nil {
		if p, ok := srcByID[*sn.Parent]; ok {
			if d, ok := present[snapshot.OriginalID(p)]; ok {
				id := d.ID
				cs.Parent = &id
			}
		}
	}
	if _, err := snapshot.Save(ctx, cp.dst, &cs); err != nil {
		return nil, fmt.Errorf("save the copy of snapshot %s: %w", sn.ID.Short(), err)
	}
	return &cs, nil
}

// showProgress reports the copy of sn while it runs (a live line on a
// terminal, status lines with --json) until the returned function is called.
func (cp *copyRun) showProgress(copier *snapshot.Copier, sn *snapshot.Snapshot) func() {
	rep := cp.out.reporter("read")
	if !rep.live() && !cp.out.json {
		return func() {}
	}
	start, base := time.Now(), copier.Progress()
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				p := copier.Progress()
				rep.Progress(snapshot.Progress{Files: p.Files - base.Files, Dirs: p.Dirs - base.Dirs, Bytes: p.Bytes - base.Bytes,
					Current: "snapshot " + sn.ID.Short(), Elapsed: time.Since(start)})
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		rep.Done()
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
