package pack

import (
	"os"
	"testing"
)

// A block whose write fails in the background fails the pack: the error
// comes back from a later write or from flush, never lost.
func TestFileOutReportsWriteError(t *testing.T) {
	f, err := os.Open(os.DevNull) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	o := newFileOut(f, false)
	defer o.release()
	data := make([]byte, 3*outSize/2)
	werr := o.write(data)
	if werr == nil {
		werr = o.write(data) // the first block's result is waited for here
	}
	_, ferr := o.flush()
	if werr == nil && ferr == nil {
		t.Fatal("writing into a read-only file reported no error")
	}
}
