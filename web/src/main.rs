//! The `fm-web` binary Trunk builds: mounts the app (see the library, [`fm_web`]).

fn main() {
    fm_web::mount();
}
