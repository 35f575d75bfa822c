package dp

import (
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/osvc/osvc/pkg/names"
)

// Handler serves the images to deployment clients:
//
//	GET /images/           the images served, as JSON
//	GET /images/{id}       the image's current version (a WIM), with range
//	                       requests, its sha256 as ETag
//
// HEAD works as GET without the body; other methods are refused.
func (p *Point) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /images/{$}", p.list)
	mux.HandleFunc("GET /images/{id}", p.file)
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
	f, err := os.Open(p.Path(s))
	if err != nil {
		// Replaced between the lookup and the open: the client asks again.
		http.Error(w, "the image's version changed; try again", http.StatusServiceUnavailable)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		http.Error(w, "cannot read the image", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+s.SHA256+`"`)
	w.Header().Set("Content-Disposition", `attachment; filename="`+id+`.wim"`)
	http.ServeContent(w, r, id+".wim", info.ModTime(), f)
}
