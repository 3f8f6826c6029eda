package snapshot_test

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cairn-backup/cairn/snapshot"
)

func mustPatterns(t testing.TB, pats []string, ci bool) *snapshot.Patterns {
	t.Helper()
	p, err := snapshot.ParsePatterns(pats, ci)
	if err != nil {
		t.Fatalf("ParsePatterns(%q): %v", pats, err)
	}
	return p
}

func TestPatternsMatch(t *testing.T) {
	type check struct {
		path  string
		isDir bool
		want  bool
	}
	tests := []struct {
		name   string
		pats   []string
		ci     bool
		checks []check
	}{
		{"name at any depth", []string{"*.tmp"}, false, []check{
			{"/a/b/c.tmp", false, true},
			{"/c.tmp", false, true},
			{"/a/b/c.tmpx", false, false},
			{"/a/b/c.TMP", false, false},
			{"/a/b.tmp/c", false, true}, // below a matching directory
			{"/a/b/ctmp", false, false},
		}},
		{"plain name excludes the directory and its contents", []string{"cache"}, false, []check{
			{"/x/cache", true, true},
			{"/cache", false, true},
			{"/x/cache/y/z", false, true},
			{"/x/cachey", true, false},
			{"/x/mycache", true, false},
			{"/x", true, false},
		}},
		{"anchored", []string{"/home/user"}, false, []check{
			{"/home/user", true, true},
			{"/home/user/a.txt", false, true},
			{"/x/home/user", true, false},
			{"/home", true, false},
			{"/home/username", true, false},
		}},
		{"relative with slash matches at any depth", []string{"foo/bar"}, false, []check{
			{"/foo/bar", false, true},
			{"/x/y/foo/bar", false, true},
			{"/x/foo/bar/baz", false, true},
			{"/x/foo/baz/bar", false, false},
			{"/x/foo", true, false},
		}},
		{"star stays in one element", []string{"/a/*/c"}, false, []check{
			{"/a/b/c", false, true},
			{"/a//c", false, false}, // empty elements are skipped, so this is /a/c
			{"/a/b/d/c", false, false},
			{"/a/c", false, false},
		}},
		{"double star in the middle", []string{"/data/**/x.txt"}, false, []check{
			{"/data/x.txt", false, true},
			{"/data/a/x.txt", false, true},
			{"/data/a/b/c/x.txt", false, true},
			{"/data/a/y.txt", false, false},
			{"/other/x.txt", false, false},
			{"/other/data/x.txt", false, false},
		}},
		{"double star twice", []string{"/a/**/b/**/c"}, false, []check{
			{"/a/b/c", false, true},
			{"/a/x/b/y/z/c", false, true},
			{"/a/x/c", false, false},
			{"/a/c/b", false, false},
		}},
		{"double star at the start", []string{"**/x.txt"}, false, []check{
			{"/x.txt", false, true},
			{"/a/b/x.txt", false, true},
			{"/a/b/x.txtt", false, false},
		}},
		{"double star at the end", []string{"/data/**"}, false, []check{
			{"/data", true, true},
			{"/data/a/b", false, true},
			{"/datax", false, false},
			{"/x/data/a", false, false},
		}},
		{"double star alone matches everything", []string{"**"}, false, []check{
			{"/a", false, true},
			{"/a/b/c", false, true},
		}},
		{"root matches everything", []string{"/"}, false, []check{
			{"/", true, true},
			{"/a/b", false, true},
		}},
		{"question mark is one character", []string{"/a/?"}, false, []check{
			{"/a/b", false, true},
			{"/a/é", false, true},
			{"/a/\xff", false, true},
			{"/a/bc", false, false},
			{"/a/", true, false},
		}},
		{"classes", []string{"/a/[bc]x", "/n/[^bc]", "/r/[a-c0-9]"}, false, []check{
			{"/a/bx", false, true},
			{"/a/cx", false, true},
			{"/a/dx", false, false},
			{"/n/d", false, true},
			{"/n/b", false, false},
			{"/r/b", false, true},
			{"/r/7", false, true},
			{"/r/d", false, false},
		}},
		{"escapes", []string{`/a/\*`, `\!x`}, false, []check{
			{"/a/*", false, true},
			{"/a/b", false, false},
			{"/q/!x", false, true},
			{"/q/x", false, false},
		}},
		{"pattern is cleaned", []string{"/a/./b/../c/", "./d"}, false, []check{
			{"/a/c", true, true},
			{"/x/d", false, true},
		}},
		{"trailing slash means directories", []string{"tmp/"}, false, []check{
			{"/x/tmp", true, true},
			{"/x/tmp", false, false},
			{"/x/tmp/f", false, true}, // its parent is a directory named tmp
			{"/x/tmpx", true, false},
		}},
		{"anchored directory", []string{"/srv/tmp/"}, false, []check{
			{"/srv/tmp", true, true},
			{"/srv/tmp", false, false},
			{"/srv/tmp/a/b", false, true},
			{"/x/srv/tmp", true, false},
		}},
		{"negation re-includes", []string{"/home/user/*", "!/home/user/keep"}, false, []check{
			{"/home/user/a", false, true},
			{"/home/user/keep", true, false},
			{"/home/user/keep/x", false, false},
			{"/home/user", true, false},
		}},
		{"last match wins", []string{"!/home/user/keep", "/home/user/*"}, false, []check{
			{"/home/user/keep", true, true},
			{"/home/user/a", false, true},
		}},
		{"negated name", []string{"*.log", "!important.log"}, false, []check{
			{"/var/a.log", false, true},
			{"/var/important.log", false, false},
			{"/var/important.log.1", false, false},
		}},
		{"negation alone matches nothing", []string{"!*.log"}, false, []check{
			{"/var/a.log", false, false},
			{"/var/a.txt", false, false},
		}},
		{"case sensitive by default", []string{"*.TMP", "/Home"}, false, []check{
			{"/a/b.tmp", false, false},
			{"/home/x", false, false},
			{"/a/b.TMP", false, true},
		}},
		{"case insensitive", []string{"*.TMP", "/Home/USER", "ÄPFEL", "[a-c]x", "/k/ſ"}, true, []check{
			{"/a/b.tmp", false, true},
			{"/a/b.Tmp", false, true},
			{"/home/user/x", false, true},
			{"/HOME/User", true, true},
			{"/x/äpfel", false, true},
			{"/x/Äpfel", false, true},
			{"/q/BX", false, true},
			{"/q/DX", false, false},
			{"/k/S", false, true}, // ſ, s and S are case variants
			{"/a/b.tmq", false, false},
		}},
		{"case insensitive negation", []string{"*.log", "!KEEP.LOG"}, true, []check{
			{"/a/X.LOG", false, true},
			{"/a/keep.log", false, false},
		}},
		{"non-UTF-8 names match byte for byte", []string{"/a/\xff", "/b/[\xff]", "/c/*.\xfe", "/d/[\x80-\xbf]"}, false, []check{
			{"/a/\xff", false, true},
			{"/a/\xfe", false, false},
			{"/a/\uFFFD", false, false},
			{"/b/\xff", false, true},
			{"/b/\xfe", false, false},
			{"/b/\uFFFD", false, false},
			{"/c/x\xff.\xfe", false, true},
			{"/c/x.\xff", false, false},
			{"/d/\x90", false, true},
			{"/d/\xc0", false, false},
		}},
		{"non-UTF-8 names ignoring case", []string{"/A/\xff", "/B/*\xfeX"}, true, []check{
			{"/a/\xff", false, true},
			{"/a/\xfe", false, false},
			{"/b/q\xfex", false, true},
			{"/b/q\xffx", false, false},
		}},
		{"star backtracking", []string{"*a*b*c"}, false, []check{
			{"/x/aaabbbccc", false, true},
			{"/x/abcabc", false, true},
			{"/x/acb", false, false},
			{"/x/ab", false, false},
		}},
		{"empty patterns are skipped", []string{"", "/a", ""}, false, []check{
			{"/a", false, true},
			{"/b", false, false},
		}},
		{"no patterns", nil, false, []check{
			{"/a", false, false},
			{"/", true, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPatterns(t, tt.pats, tt.ci)
			for _, c := range tt.checks {
				if got := p.Match(c.path, c.isDir); got != c.want {
					t.Errorf("patterns %q (ignore case %v): Match(%q, dir=%v) = %v, want %v", tt.pats, tt.ci, c.path, c.isDir, got, c.want)
				}
			}
		})
	}
}

func TestParsePatternsInvalid(t *testing.T) {
	for _, pat := range []string{"[", "/a/[b", `a\`, "[]", "[a-]", "[-a]", "[^]", "!", "/ok/**/x[z"} {
		_, err := snapshot.ParsePatterns([]string{"*.ok", pat}, false)
		if err == nil {
			t.Errorf("ParsePatterns(%q): no error", pat)
			continue
		}
		if !strings.Contains(err.Error(), pat) {
			t.Errorf("ParsePatterns(%q): error %q does not name the pattern", pat, err)
		}
	}
	if _, err := snapshot.ParsePatterns([]string{"["}, false); !errors.Is(err, path.ErrBadPattern) {
		t.Errorf("ParsePatterns([): error %v is not path.ErrBadPattern", err)
	}
}

func TestPatternsEmpty(t *testing.T) {
	var nilp *snapshot.Patterns
	if !nilp.Empty() || nilp.Match("/a", false) || nilp.ChildMayMatch("/a") {
		t.Error("nil Patterns is not an empty list matching nothing")
	}
	for _, pats := range [][]string{nil, {}, {""}} {
		if p := mustPatterns(t, pats, false); !p.Empty() {
			t.Errorf("ParsePatterns(%q).Empty() = false", pats)
		}
	}
	if mustPatterns(t, []string{"x"}, false).Empty() {
		t.Error(`ParsePatterns(["x"]).Empty() = true`)
	}
}

func TestPatternsChildMayMatch(t *testing.T) {
	tests := []struct {
		pats []string
		dir  string
		want bool
	}{
		{[]string{"/data/**/x.txt"}, "/", true},
		{[]string{"/data/**/x.txt"}, "/data", true},
		{[]string{"/data/**/x.txt"}, "/data/a/b", true},
		{[]string{"/data/**/x.txt"}, "/other", false},
		{[]string{"/data/**/x.txt"}, "/other/data", false},
		{[]string{"/a/b/c"}, "/a", true},
		{[]string{"/a/b/c"}, "/a/b", true},
		{[]string{"/a/b/c"}, "/a/b/c", true}, // it matches, so does all below
		{[]string{"/a/b/c"}, "/a/b/c/d", true},
		{[]string{"/a/b/c"}, "/z", false},
		{[]string{"/a/b/c"}, "/a/x", false},
		{[]string{"/a/*/c"}, "/a/zz", true},
		{[]string{"*.txt"}, "/any/where", true},
		{[]string{"foo/bar"}, "/x", true},
		{[]string{"/a/**", "!/a/b"}, "/a", true},
		{[]string{"/a/**", "!/a/b"}, "/a/b", false},
		{[]string{"/a/**", "!/a/b"}, "/a/b/c", false},
		{[]string{"!/a/b", "/a/b/c"}, "/a/b", true},
		{[]string{"/x", "/y"}, "/y", true},
		{nil, "/a", false},
	}
	for _, tt := range tests {
		p := mustPatterns(t, tt.pats, false)
		if got := p.ChildMayMatch(tt.dir); got != tt.want {
			t.Errorf("patterns %q: ChildMayMatch(%q) = %v, want %v", tt.pats, tt.dir, got, tt.want)
		}
	}
}

// TestPatternsTreeConsistency checks, over every path of a small tree, the
// two promises walks rely on: a matched directory takes everything below it
// along, and ChildMayMatch never hides a directory with matching children.
func TestPatternsTreeConsistency(t *testing.T) {
	names := []string{"a", "b", "x.txt", "A"}
	var dirs []string
	paths := []string{}
	var grow func(p string, depth int)
	grow = func(p string, depth int) {
		if depth == 4 {
			return
		}
		for _, n := range names {
			q := p + "/" + n
			paths = append(paths, q)
			if depth < 3 {
				dirs = append(dirs, q)
			}
			grow(q, depth+1)
		}
	}
	dirs = append(dirs, "/")
	grow("", 0)
	patternLists := [][]string{
		{"/a/**/x.txt"}, {"**/b"}, {"a/b"}, {"/a/*/x.txt"}, {"*.txt"}, {"/b"},
		{"a/"}, {"/a/**"}, {"/*/a/"}, {"**/a/**/b/**"}, {"[ab]/x.txt"},
		{"/a/**", "!/a/b"}, {"/a/**", "!b", "/a/b/a"}, {"*", "!/a", "/a/x.txt"},
	}
	for _, pats := range patternLists {
		for _, ci := range []bool{false, true} {
			p := mustPatterns(t, pats, ci)
			for _, d := range dirs {
				below := strings.TrimSuffix(d, "/") + "/"
				var childMatch string
				for _, q := range paths {
					if strings.HasPrefix(q, below) && (p.Match(q, true) || p.Match(q, false)) {
						childMatch = q
						break
					}
				}
				if childMatch != "" && !p.ChildMayMatch(d) {
					t.Errorf("patterns %q (ignore case %v): ChildMayMatch(%q) = false, but %q matches", pats, ci, d, childMatch)
				}
				if slices.ContainsFunc(pats, func(s string) bool { return s[0] == '!' }) || !p.Match(d, true) {
					continue
				}
				for _, q := range paths {
					if strings.HasPrefix(q, below) && !p.Match(q, false) {
						t.Errorf("patterns %q (ignore case %v): directory %q matches but %q below it does not", pats, ci, d, q)
					}
				}
			}
		}
	}
}

func TestReadPatternFile(t *testing.T) {
	t.Setenv("CAIRN_TEST_HOME", "/home/me")
	t.Setenv("CAIRN_TEST_EMPTY", "")
	file := filepath.Join(t.TempDir(), "excludes")
	text := "\xef\xbb\xbf# caches\n" +
		"*.tmp\n" +
		"\n" +
		"   \t\n" +
		"  /var/cache/  \r\n" +
		"  # indented comment\n" +
		"$CAIRN_TEST_HOME/.cache\n" +
		"${CAIRN_TEST_HOME}/Downloads/**\n" +
		"$CAIRN_TEST_EMPTY\n" +
		"!keep.tmp\n" +
		"last-without-newline"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := snapshot.ReadPatternFile(file)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"*.tmp", "/var/cache/", "/home/me/.cache", "/home/me/Downloads/**", "!keep.tmp", "last-without-newline"}
	if !slices.Equal(got, want) {
		t.Errorf("ReadPatternFile = %q, want %q", got, want)
	}

	p := mustPatterns(t, got, false)
	for path, want := range map[string]bool{
		"/home/me/.cache/x":      true,
		"/home/me/Downloads/a/b": true,
		"/home/me/doc.tmp":       true,
		"/home/me/keep.tmp":      false,
		"/home/me/notes":         false,
	} {
		if p.Match(path, false) != want {
			t.Errorf("patterns from file: Match(%q) = %v, want %v", path, !want, want)
		}
	}

	_, err = snapshot.ReadPatternFile(filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadPatternFile(missing) error = %v, want fs.ErrNotExist", err)
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("/data/**/x.txt", "/data/a/x.txt", false, false)
	f.Add("*.TMP", "/a/b.tmp", false, true)
	f.Add("tmp/", "/x/tmp", true, false)
	f.Add("!/a/[^b-d]?*", "/a/\xff\xfe", false, true)
	f.Add(`[\]-\]]**/**/\`, "//", true, true)
	f.Add("[a-", "a", false, false)
	f.Fuzz(func(t *testing.T, pat, path string, isDir, ci bool) {
		p, err := snapshot.ParsePatterns([]string{pat}, ci)
		if !ci {
			checkSameAsPathMatch(t, pat, path, err)
		}
		if err != nil {
			return
		}
		m := p.Match(path, isDir)
		p.ChildMayMatch(path)
		// A directory that matches takes everything below it along.
		if m && isDir && !p.Match(path+"/x", false) {
			t.Errorf("pattern %q: directory %q matches but %q does not", pat, path, path+"/x")
		}
		if m && isDir && !strings.HasPrefix(pat, "!") && !p.ChildMayMatch(path) {
			t.Errorf("pattern %q: directory %q matches but ChildMayMatch is false", pat, path)
		}
	})
}

// checkSameAsPathMatch compares one anchored element with path.Match, where
// the latter applies: valid UTF-8 without "/" or the syntax of patterns.
func checkSameAsPathMatch(t *testing.T, pat, name string, parseErr error) {
	if !utf8.ValidString(pat) || !utf8.ValidString(name) || strings.Contains(pat, "/") || strings.Contains(name, "/") ||
		pat == "" || pat[0] == '!' || pat == "**" || pat == "." || pat == ".." || name == "" {
		return
	}
	want, err := path.Match(pat, name)
	p, perr := snapshot.ParsePatterns([]string{"/" + pat}, false)
	if (err != nil) != (perr != nil) {
		t.Fatalf("pattern %q: path.Match error %v, ParsePatterns error %v", pat, err, perr)
	}
	if err != nil {
		return
	}
	if got := p.Match("/"+name, false); got != want {
		t.Errorf("pattern %q, name %q: Match = %v, path.Match = %v", pat, name, got, want)
	}
}
