package source

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tool is one run of an external program that produces or consumes a
// stream. Secrets reach it only through its environment, never its
// arguments, which every user of the machine can read.
type tool struct {
	name    string   // for messages: pg_dump, psql, the command's argv[0]
	path    string   // the binary
	args    []string // without argv[0]
	env     []string // added to the environment; later entries win
	secrets []string // removed from any message
	// errLines, if not nil, picks out lines of the error output that
	// mean failure although the tool may exit 0 (psql without
	// ON_ERROR_STOP); they are counted and the first ones reported.
	errLines func(line string) bool
}

func (t *tool) command(ctx context.Context, stderr *errLog) *exec.Cmd {
	cmd := exec.CommandContext(ctx, t.path, t.args...)
	if len(t.env) > 0 {
		cmd.Env = append(os.Environ(), t.env...)
	}
	cmd.Stderr = stderr
	// Its own process group, killed whole on cancellation: a script's
	// children must not outlive an interrupted backup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A child that leaves a grandchild holding the error output open
	// must not keep Wait from returning.
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// stream starts the tool and returns its standard output as a stream
// whose Close reports the tool's result.
func (t *tool) stream(ctx context.Context) (io.ReadCloser, error) {
	stderr := newErrLog(t.errLines)
	cmd := t.command(ctx, stderr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", t.name, err)
	}
	return &toolStream{ctx: ctx, t: t, cmd: cmd, out: out, stderr: stderr}, nil
}

// feed runs the tool with r on its standard input and waits for it.
func (t *tool) feed(ctx context.Context, r io.Reader) error {
	stderr := newErrLog(t.errLines)
	cmd := t.command(ctx, stderr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", t.name, err)
	}
	src := &errReader{r: r}
	_, copyErr := io.Copy(stdin, src)
	if src.err != nil {
		// The stream broke: the tool must not see a clean end of input
		// and commit what it has (psql --single-transaction would).
		_ = cmd.Cancel()
	}
	stdin.Close()
	waitErr := cmd.Wait()
	if src.err != nil {
		return fmt.Errorf("read the stream for %s: %w", t.name, src.err)
	}
	if err := t.result(ctx, waitErr, stderr); err != nil {
		return err
	}
	// A tool that stops reading early and exits 0 has not taken the
	// whole stream; a broken pipe alone is explained by its exit status.
	if copyErr != nil {
		return fmt.Errorf("feed %s: %w", t.name, copyErr)
	}
	return nil
}

// errReader keeps the error of the reader it wraps, which io.Copy would
// not tell from a write error.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// output runs the tool with input on its standard input and returns its
// standard output, for short queries.
func (t *tool) output(ctx context.Context, input string) (string, error) {
	stderr := newErrLog(t.errLines)
	cmd := t.command(ctx, stderr)
	cmd.Stdin = strings.NewReader(input)
	var out bytes.Buffer
	cmd.Stdout = &out
	err := cmd.Run()
	if err := t.result(ctx, err, stderr); err != nil {
		return "", err
	}
	return out.String(), nil
}

// result turns the tool's exit and error output into an error, or nil.
func (t *tool) result(ctx context.Context, waitErr error, stderr *errLog) error {
	if ctx.Err() != nil && waitErr != nil {
		return fmt.Errorf("%s: %w", t.name, ctx.Err())
	}
	if waitErr != nil {
		msg := stderr.summary(t.secrets)
		if msg == "" {
			return fmt.Errorf("%s: %w", t.name, waitErr)
		}
		return fmt.Errorf("%s: %w: %s", t.name, waitErr, msg)
	}
	if n, first := stderr.matches(t.secrets); n > 0 {
		return fmt.Errorf("%s: %d errors: %s", t.name, n, first)
	}
	return nil
}

// toolStream is a tool's standard output.
type toolStream struct {
	ctx    context.Context
	t      *tool
	cmd    *exec.Cmd
	out    io.ReadCloser
	stderr *errLog
	eof    bool
	closed bool
	err    error
}

func (s *toolStream) Read(p []byte) (int, error) {
	n, err := s.out.Read(p)
	if err == io.EOF {
		s.eof = true
	}
	return n, err
}

func (s *toolStream) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if !s.eof {
		// The reader gave up: stop the producer rather than let it
		// block on a full pipe, and say the stream is cut short.
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.err = fmt.Errorf("%s: stream closed before its end", s.t.name)
		return s.err
	}
	s.err = s.t.result(s.ctx, s.cmd.Wait(), s.stderr)
	return s.err
}

// errLog keeps what a summary of a tool's error output needs: the last
// few lines, and the first few lines that match a filter, so a tool that
// writes gigabytes of warnings cannot fill memory.
type errLog struct {
	mu      sync.Mutex
	partial []byte   // the current line, cut at maxLine
	last    []string // the last maxKeep lines
	match   func(string) bool
	matched []string // the first maxKeep matching lines
	nmatch  int
}

const (
	maxLine = 400
	maxKeep = 3
)

func newErrLog(match func(string) bool) *errLog { return &errLog{match: match} }

func (l *errLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.add(p)
			break
		}
		l.add(p[:i])
		l.endLine()
		p = p[i+1:]
	}
	return n, nil
}

func (l *errLog) add(p []byte) {
	if room := maxLine - len(l.partial); room > 0 {
		l.partial = append(l.partial, p[:min(room, len(p))]...)
	}
}

func (l *errLog) endLine() {
	line := strings.TrimSpace(string(l.partial))
	l.partial = l.partial[:0]
	if line == "" {
		return
	}
	if l.match != nil && l.match(line) {
		if l.nmatch < maxKeep {
			l.matched = append(l.matched, line)
		}
		l.nmatch++
	}
	l.last = append(l.last, line)
	if len(l.last) > maxKeep {
		l.last = l.last[1:]
	}
}

// summary returns the last lines, joined, without secrets.
func (l *errLog) summary(secrets []string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.endLine()
	}
	return redact(strings.Join(l.last, "; "), secrets)
}

// matches returns how many lines matched the filter, and the first ones.
func (l *errLog) matches(secrets []string) (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.endLine()
	}
	return l.nmatch, redact(strings.Join(l.matched, "; "), secrets)
}

// redact replaces each secret in msg. Tools should never print one, but
// some echo what they were given.
func redact(msg string, secrets []string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}

// lookTool returns the first of names found in PATH.
func lookTool(names ...string) (string, error) {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", strings.Join(names, " or "))
}
