package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/snapshot"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// output prints human text or JSON, as the global flags ask.
type output struct {
	json, quiet, verbose bool
	stdout, stderr       io.Writer
	tty                  bool // stderr is a terminal: live progress is possible
}

func newOutput(c *cli.Context) *output {
	return &output{
		json: c.Bool("json"), quiet: c.Bool("quiet"), verbose: c.Bool("verbose"),
		stdout: os.Stdout, stderr: os.Stderr,
		tty: term.IsTerminal(int(os.Stderr.Fd())),
	}
}

// Printf prints human text on stdout, unless --quiet or --json.
func (o *output) Printf(format string, args ...any) {
	if o.quiet || o.json {
		return
	}
	fmt.Fprintf(o.stdout, format, args...)
}

// Verbosef prints details on stderr with --verbose.
func (o *output) Verbosef(format string, args ...any) {
	if o.verbose && !o.quiet {
		fmt.Fprintf(o.stderr, format, args...)
	}
}

// JSON prints v as one line on stdout.
func (o *output) JSON(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	b = append(b, '\n')
	_, err = o.stdout.Write(b)
	return err
}

// JSONIndent prints v indented, for documents meant to be read (cat).
func (o *output) JSONIndent(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode json: %w", err)
	}
	b = append(b, '\n')
	_, err = o.stdout.Write(b)
	return err
}

// errorMessage shortens an error about path: a *fs.PathError for the same
// path would name it twice.
func errorMessage(path string, err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}

// reporter shows a backup's or restore's progress and per-file errors: a
// live line on a terminal, status lines with --json, else errors only.
type reporter struct {
	o    *output
	verb string // "backed up", "restored"

	mu       sync.Mutex
	last     time.Time
	lineLen  int // width of the progress line on screen, 0 if none
	finished bool
}

var _ snapshot.Reporter = (*reporter)(nil)

func (o *output) reporter(verb string) *reporter {
	return &reporter{o: o, verb: verb}
}

func (r *reporter) live() bool { return r.o.tty && !r.o.quiet && !r.o.json }

// Progress implements snapshot.Reporter.
func (r *reporter) Progress(p snapshot.Progress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return
	}
	now := time.Now()
	switch {
	case r.o.json:
		if now.Sub(r.last) < 500*time.Millisecond {
			return
		}
		r.last = now
		_ = r.o.JSON(statusJSON(p))
	case r.live():
		r.draw(progressLine(p, r.verb))
	}
}

// Error implements snapshot.Reporter.
func (r *reporter) Error(path string, err error) {
	if errors.Is(err, context.Canceled) {
		return // the interruption itself is reported once, at the end
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := errorMessage(path, err)
	if r.o.json {
		b, _ := json.Marshal(struct {
			MessageType string `json:"message_type"`
			Item        string `json:"item"`
			Error       string `json:"error"`
		}{"error", path, msg})
		fmt.Fprintf(r.o.stderr, "%s\n", b)
		return
	}
	r.clear()
	fmt.Fprintf(r.o.stderr, "cairn: %s: %s\n", path, oneLine(errors.New(msg)))
}

// Done removes the progress line; later calls change nothing.
func (r *reporter) Done() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clear()
	r.finished = true
}

func (r *reporter) clear() {
	if r.lineLen > 0 {
		fmt.Fprint(r.o.stderr, "\r\x1b[K")
		r.lineLen = 0
	}
}

func (r *reporter) draw(line string) {
	width := 80
	if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 0 {
		width = w
	}
	line = truncate(line, width-1)
	fmt.Fprint(r.o.stderr, "\r\x1b[K"+line)
	r.lineLen = len(line)
}

// truncate cuts s to at most n runes, keeping valid UTF-8.
func truncate(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i := 0
	for pos := range s {
		if i == n {
			return s[:pos]
		}
		i++
	}
	return s
}

func progressLine(p snapshot.Progress, verb string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] ", formatDuration(p.Elapsed))
	if p.TotalBytes > 0 {
		fmt.Fprintf(&b, "%.1f%% ", 100*float64(p.Bytes)/float64(p.TotalBytes))
	}
	if p.TotalFiles > 0 {
		fmt.Fprintf(&b, "%d/%d files", p.Files, p.TotalFiles)
	} else {
		fmt.Fprintf(&b, "%d files", p.Files)
	}
	fmt.Fprintf(&b, ", %d dirs, ", p.Dirs)
	if p.TotalBytes > 0 {
		fmt.Fprintf(&b, "%s / %s %s", formatBytes(p.Bytes), formatBytes(p.TotalBytes), verb)
	} else {
		fmt.Fprintf(&b, "%s %s", formatBytes(p.Bytes), verb)
	}
	if secs := p.Elapsed.Seconds(); secs >= 1 {
		rate := float64(p.Bytes) / secs
		fmt.Fprintf(&b, ", %s/s", formatBytes(int64(rate)))
		if p.TotalBytes > p.Bytes && rate > 0 {
			eta := time.Duration(float64(p.TotalBytes-p.Bytes) / rate * float64(time.Second))
			fmt.Fprintf(&b, ", ETA %s", formatDuration(eta))
		}
	}
	if p.Errors > 0 {
		fmt.Fprintf(&b, ", %d errors", p.Errors)
	}
	if p.Current != "" {
		b.WriteString("  " + p.Current)
	}
	return b.String()
}

type statusMessage struct {
	MessageType    string   `json:"message_type"`
	SecondsElapsed float64  `json:"seconds_elapsed"`
	PercentDone    float64  `json:"percent_done"`
	TotalFiles     int      `json:"total_files"`
	FilesDone      int      `json:"files_done"`
	DirsDone       int      `json:"dirs_done"`
	TotalBytes     int64    `json:"total_bytes"`
	BytesDone      int64    `json:"bytes_done"`
	ErrorCount     int      `json:"error_count"`
	CurrentFiles   []string `json:"current_files"`
}

func statusJSON(p snapshot.Progress) statusMessage {
	m := statusMessage{
		MessageType: "status", SecondsElapsed: p.Elapsed.Seconds(),
		TotalFiles: p.TotalFiles, FilesDone: p.Files, DirsDone: p.Dirs,
		TotalBytes: p.TotalBytes, BytesDone: p.Bytes, ErrorCount: p.Errors,
		CurrentFiles: []string{},
	}
	if p.TotalBytes > 0 {
		m.PercentDone = min(1, float64(p.Bytes)/float64(p.TotalBytes))
	}
	if p.Current != "" {
		m.CurrentFiles = append(m.CurrentFiles, p.Current)
	}
	return m
}

// formatBytes prints n in binary units ("1.500 MiB").
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= unit
		if v < unit || u == "PiB" {
			return fmt.Sprintf("%.3f %s", v, u)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// formatDuration prints d as m:ss or h:mm:ss.
func formatDuration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s < 3600 {
		return fmt.Sprintf("%d:%02d", s/60, s%60)
	}
	return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
}

// localTime formats a time for tables.
func localTime(t time.Time) string { return t.Local().Format(time.DateTime) }
