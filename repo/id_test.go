package repo_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/cairn-backup/cairn/repo"
)

func TestParseID(t *testing.T) {
	hex := "0123456789abcdef" + strings.Repeat("00", 8) + strings.Repeat("ff", 16)
	cases := []struct {
		in string
		ok bool
	}{
		{hex, true},
		{strings.ToUpper(hex), true},
		{strings.Repeat("0", 64), true},
		{"", false},
		{hex[:63], false},
		{hex + "0", false},
		{strings.Repeat("g", 64), false},
		{" " + hex[1:], false},
		{strings.Repeat("é", 32), false},
	}
	for _, tc := range cases {
		id, err := repo.ParseID(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseID(%q): %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && id.String() != strings.ToLower(tc.in) {
			t.Errorf("ParseID(%q).String() = %s", tc.in, id)
		}
	}
}

func TestIDForms(t *testing.T) {
	id, err := repo.ParseID("deadbeef" + strings.Repeat("01", 28))
	if err != nil {
		t.Fatal(err)
	}
	if id.Short() != "deadbeef" {
		t.Errorf("Short() = %q", id.Short())
	}
	if id.IsNull() || !(repo.ID{}).IsNull() {
		t.Error("IsNull is wrong")
	}
	b, err := json.Marshal(map[string]repo.ID{"id": id})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"id":"`+id.String()+`"}` {
		t.Errorf("JSON form %s", b)
	}
	var back map[string]repo.ID
	if err := json.Unmarshal(b, &back); err != nil || back["id"] != id {
		t.Errorf("JSON round trip: %v, %v", back, err)
	}
	for _, bad := range []string{`{"id":"abc"}`, `{"id":12}`, `{"id":"` + strings.Repeat("z", 64) + `"}`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("unmarshal %s succeeded", bad)
		}
	}
}

func TestHandleString(t *testing.T) {
	cases := map[repo.Handle]string{
		{Type: repo.ConfigFile}:                 "config",
		{Type: repo.PackFile, Name: "ab12"}:     "data/ab12",
		{Type: repo.SnapshotFile, Name: "ff00"}: "snapshots/ff00",
	}
	for h, want := range cases {
		if h.String() != want {
			t.Errorf("%#v.String() = %q, want %q", h, h.String(), want)
		}
	}
}

func FuzzParseID(f *testing.F) {
	f.Add(strings.Repeat("ab", 32))
	f.Add(strings.Repeat("AB", 32))
	f.Add(strings.Repeat("ab", 31) + "a")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := repo.ParseID(s)
		if err != nil {
			return
		}
		if id.String() != strings.ToLower(s) {
			t.Fatalf("ParseID(%q) = %s", s, id)
		}
		var back repo.ID
		if err := back.UnmarshalText([]byte(id.String())); err != nil || back != id {
			t.Fatalf("text round trip of %s: %s, %v", id, back, err)
		}
	})
}
