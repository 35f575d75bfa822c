package dp

import (
	"bytes"
	"encoding/json"
	"mime"
	"net/http"
	"os"
	pathpkg "path"
	"slices"
	"strings"
	"time"

	"github.com/osvc/osvc/pkg/names"
)

// Handler serves the images to deployment clients:
//
//	GET /images/              the images served, as JSON
//	GET /images/{id}          the image's current version (a WIM), with range
//	                          requests, its sha256 as ETag
//	GET /images/{id}/{path}   a file of the version's package tree (an OS
//	                          upgrade package kept as a folder), its path
//	                          matched ignoring case, e.g.
//	                          /images/w11-upgrade/sources/install.wim
//
// HEAD works as GET without the body; other methods are refused.
func (p *Point) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /images/{$}", p.list)
	mux.HandleFunc("GET /images/{id}", p.file)
	mux.HandleFunc("GET /images/{id}/{path...}", p.treeFile)
	return mux
}

// listed is one image in the list.
type listed struct {
	Served
	Path string `json:"path"`
}

func (p *Point) list(w http.ResponseWriter, _ *http.Request) {
	p.mu.Lock()
	out := make([]listed, 0, len(p.served))
	for _, s := range p.served {
		out = append(out, listed{Served: s, Path: "/" + s.Image})
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b listed) int { return strings.Compare(a.Image, b.Image) })
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (p *Point) file(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if names.ValidateID(id) != nil {
		http.Error(w, "no such image: want /images/{id}", http.StatusNotFound)
		return
	}
	s, ok := p.Served("images/" + id)
	if !ok {
		http.Error(w, "this distribution point does not serve images/"+id, http.StatusNotFound)
		return
	}
	serveBlob(w, r, p.Path(s), s.SHA256, id+".wim")
}

func (p *Point) treeFile(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if names.ValidateID(id) != nil {
		http.Error(w, "no such image: want /images/{id}/{path}", http.StatusNotFound)
		return
	}
	f, path, ok := p.File("images/"+id, r.PathValue("path"))
	if !ok {
		http.Error(w, "this distribution point serves no such file of images/"+id, http.StatusNotFound)
		return
	}
	name := pathpkg.Base(f.GetPath())
	if f.GetSizeBytes() == 0 {
		// An empty file is not stored.
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"`+f.GetSha256()+`"`)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(nil))
		return
	}
	serveBlob(w, r, path, f.GetSha256(), name)
}

// serveBlob serves the stored file path, whose content is sha256, with
// range requests and its sha256 as ETag.
func serveBlob(w http.ResponseWriter, r *http.Request, path, sha256, name string) {
	f, err := os.Open(path)
	if err != nil {
		// Replaced between the lookup and the open: the client asks again.
		http.Error(w, "the image's version changed; try again", http.StatusServiceUnavailable)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		http.Error(w, "cannot read the file", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sha256+`"`)
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": name}))
	http.ServeContent(w, r, name, info.ModTime(), f)
}
