package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cairn-backup/cairn/repo"
	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func newCheckCommand() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "verify the repository's structure and, with --read-data, its contents",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "read-data", Usage: "download every pack and verify every blob in it"},
			&cli.StringFlag{Name: "read-data-subset", Usage: "read only a part of the packs: group `n/t` (by pack ID) or a random P%"},
		},
		Action: runCheck,
	}
}

type checkSummary struct {
	MessageType     string  `json:"message_type"`
	Errors          int     `json:"errors"`
	Notes           int     `json:"notes"`
	IndexFiles      int     `json:"index_files"`
	Packs           int     `json:"packs"`
	Blobs           int     `json:"blobs"`
	Snapshots       int     `json:"snapshots"`
	Trees           int     `json:"trees"`
	PacksRead       int     `json:"packs_read"`
	BlobsRead       int     `json:"blobs_read"`
	BytesRead       int64   `json:"bytes_read"`
	DurationSeconds float64 `json:"duration_seconds"`
}

func runCheck(c *cli.Context) error {
	if err := needArgs(c, 0, 0); err != nil {
		return err
	}
	opts := snapshot.CheckOptions{ReadData: c.Bool("read-data"), Connections: connections(c)}
	if s := c.String("read-data-subset"); s != "" {
		sub, err := snapshot.ParseSubset(s)
		if err != nil {
			return usageError(c, "--read-data-subset: %v", err)
		}
		opts.ReadData, opts.Subset = true, sub
	}
	out := newOutput(c)
	p := &checkPrinter{o: out, line: liveLine{o: out}, start: time.Now(), subset: opts.Subset}
	opts.Report, opts.Progress = p.issue, p.progress
	return withRepo(c, func(ctx context.Context, r *repo.Repo) error {
		// Check what the repository holds, never the local copies of it.
		r.SetCache(nil)
		var res snapshot.CheckResult
		err := r.WithLock(ctx, false, func(ctx context.Context) error {
			var err error
			res, err = snapshot.Check(ctx, r, opts)
			return err
		})
		p.clear()
		if err != nil {
			return err
		}
		if out.json {
			if err := out.JSON(checkSummary{
				MessageType: "summary", Errors: res.Errors, Notes: res.Notes,
				IndexFiles: res.IndexFiles, Packs: res.Packs, Blobs: res.Blobs,
				Snapshots: res.Snapshots, Trees: res.Trees,
				PacksRead: res.PacksRead, BlobsRead: res.BlobsRead, BytesRead: res.BytesRead,
				DurationSeconds: time.Since(p.start).Seconds(),
			}); err != nil {
				return err
			}
		} else {
			out.Printf("checked %s, %s, %s, %s holding %s\n",
				nounCount(res.Snapshots, "snapshot"), nounCount(res.Trees, "tree"), nounCount(res.IndexFiles, "index file"),
				nounCount(res.Packs, "pack"), nounCount(res.Blobs, "blob"))
			if opts.ReadData {
				out.Printf("read %s (%s), verified %s\n", nounCount(res.PacksRead, "pack"), formatBytes(res.BytesRead), nounCount(res.BlobsRead, "blob"))
			}
		}
		if res.Errors > 0 {
			return &exitError{code: exitFatal, err: fmt.Errorf("check found %s", nounCount(res.Errors, "error"))}
		}
		out.Printf("no errors were found\n")
		return nil
	})
}

// checkPrinter shows what check finds: errors on stderr, notes and phases
// on stdout, a live progress line on a terminal, JSON lines with --json.
// Check calls it from one goroutine at a time.
type checkPrinter struct {
	o      *output
	line   liveLine
	start  time.Time
	subset snapshot.Subset
	phase  string
	last   time.Time
}

func (p *checkPrinter) clear() { p.line.clear() }

func (p *checkPrinter) issue(is snapshot.CheckIssue) {
	p.line.clear()
	kind := "error"
	if is.Note {
		kind = "note"
	}
	switch {
	case p.o.json:
		_ = p.o.JSON(map[string]string{"message_type": kind, "message": is.Message})
	case is.Note:
		p.o.Printf("note: %s\n", is.Message)
	default:
		fmt.Fprintf(p.o.stderr, "error: %s\n", is.Message)
	}
}

var checkPhases = map[string]string{
	"index":     "load snapshots, index files and the list of packs",
	"packs":     "check pack files against the index",
	"snapshots": "check snapshots, trees and blobs",
	"headers":   "check pack headers",
	"data":      "read all data and check pack headers",
}

func (p *checkPrinter) progress(pr snapshot.CheckProgress) {
	if pr.Phase != p.phase {
		p.phase = pr.Phase
		p.line.clear()
		text := checkPhases[pr.Phase]
		if pr.Phase == "data" && p.subset != (snapshot.Subset{}) {
			text = fmt.Sprintf("read data subset %s and check pack headers", p.subset)
		}
		p.o.Printf("%s\n", text)
	}
	now := time.Now()
	if now.Sub(p.last) < 200*time.Millisecond && pr.Done < pr.Total {
		return
	}
	p.last = now
	var text string
	switch pr.Phase {
	case "snapshots":
		text = fmt.Sprintf("%d trees checked", pr.Done)
	case "headers", "data":
		text = fmt.Sprintf("%d / %d packs", pr.Done, pr.Total)
		if pr.Bytes > 0 {
			text += fmt.Sprintf(", %s read", formatBytes(pr.Bytes))
			if secs := now.Sub(p.start).Seconds(); secs >= 1 {
				text += fmt.Sprintf(", %s/s", formatBytes(int64(float64(pr.Bytes)/secs)))
			}
		}
	default:
		return
	}
	if p.o.json {
		if now.Sub(p.start) >= time.Second {
			_ = p.o.JSON(map[string]any{"message_type": "status", "phase": pr.Phase,
				"seconds_elapsed": now.Sub(p.start).Seconds(), "done": pr.Done, "total": pr.Total, "bytes_done": pr.Bytes})
		}
		return
	}
	p.line.draw(fmt.Sprintf("[%s] %s", formatDuration(now.Sub(p.start)), text))
}

// liveLine is a progress line on a terminal (stderr), redrawn in place;
// on anything else, and with --quiet or --json, it shows nothing.
type liveLine struct {
	o *output
	n int // width on screen, 0 if none
}

func (l *liveLine) draw(text string) {
	if !l.o.tty || l.o.quiet || l.o.json {
		return
	}
	width := 80
	if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 0 {
		width = w
	}
	text = truncate(text, width-1)
	fmt.Fprint(l.o.stderr, "\r\x1b[K"+text)
	l.n = len(text)
}

func (l *liveLine) clear() {
	if l.n > 0 {
		fmt.Fprint(l.o.stderr, "\r\x1b[K")
		l.n = 0
	}
}

// nounCount says "1 pack", "2 packs", "3 entries".
func nounCount(n int, noun string) string {
	switch {
	case n == 1:
		return "1 " + noun
	case strings.HasSuffix(noun, "y"):
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
