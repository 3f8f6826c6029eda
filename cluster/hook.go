package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// hookSet is the hooks of one scope (the run, or a component).
//
// A hook runs without a shell, with the environment of cairn plus
// CAIRN_CLUSTER, CAIRN_RUN and CAIRN_NODE; a component's hooks also get
// CAIRN_COMPONENT and CAIRN_KIND, and post hooks CAIRN_RESULT (completed or
// failed). Its output goes to the run log, each line prefixed with
// "[SCOPE PHASE PROGRAM] ".
type hookSet struct {
	scope string // "run", or the component's name
	hooks Hooks
	env   []string // added to the environment of each hook
	log   io.Writer
}

// run runs the hooks of phase (pre or post) in order and stops at the first
// that fails. A failure names the hook and why, in one line.
func (h hookSet) run(ctx context.Context, phase string, extraEnv ...string) error {
	argvs := h.hooks.Pre
	if phase == "post" {
		argvs = h.hooks.Post
	}
	for _, argv := range argvs {
		if err := h.runOne(ctx, phase, argv, extraEnv); err != nil {
			return err
		}
	}
	return nil
}

func (h hookSet) runOne(ctx context.Context, phase string, argv, extraEnv []string) error {
	name := fmt.Sprintf("%s %s hook %s", h.scope, phase, argv[0])
	timeout := h.hooks.Timeout.Or(DefaultHookTimeout)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cmd := exec.CommandContext(hctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), h.env...), extraEnv...)
	out := &prefixWriter{w: h.log, prefix: "[" + h.scope + " " + phase + " " + argv[0] + "] "}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a timeout ends what the hook started
	// too (a script's children), and a Ctrl-C on the terminal does not
	// reach a post hook that must finish.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Output pipes held open by a leftover child must not hold up the run.
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	out.Flush()
	switch {
	case err == nil:
		return nil
	case errors.Is(hctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
		return fmt.Errorf("%s: timed out after %s and was killed", name, timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", name, context.Cause(ctx))
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("%s: %s", name, ee.ProcessState)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// prefixWriter writes each line with a prefix, so that the output of
// hooks in the run log says where it came from.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.emit(p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

// Flush writes a last line that had no line end.
func (p *prefixWriter) Flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		p.emit(p.buf)
		p.buf = nil
	}
}

func (p *prefixWriter) emit(line []byte) {
	// The log is best effort: a closed stderr must not fail the backup.
	_, _ = io.WriteString(p.w, p.prefix+strings.TrimRight(string(line), "\r")+"\n")
}
