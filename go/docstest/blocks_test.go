package docstest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestShellBlocksExtractsOnlySh(t *testing.T) {
	path := filepath.Join(t.TempDir(), "page.md")
	text := "# Title\n\n```sh\necho one\necho two\n```\n\n```text\nnot run\n```\n\n```go\nfmt.Println()\n```\n\n  ```sh\n  echo indented\n  ```\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	blocks, err := shellBlocks(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 2 || blocks[0].line != 3 || blocks[0].script != "echo one\necho two\n" || blocks[1].script != "  echo indented\n" {
		t.Fatalf("blocks %+v", blocks)
	}
}
