// How Tally's gateway keys the views topic, for the checker: a record key is
// the video id, or `video_id~salt` for a configured hot video
// (libs/model/src/salt.rs). A peer counts per record key, as Tally's counter
// counts per (video, salt); the checker merges salts, as Tally's writer does.
package tally.peers;

/** Record keys and window keys of the peers' outputs. */
final class Keys {
    private Keys() {}

    /** The video of a record key: the part before `~`, if any. */
    static String video(String recordKey) {
        int salt = recordKey.indexOf('~');
        return salt < 0 ? recordKey : recordKey.substring(0, salt);
    }

    /** The key a peer writes for a window: `recordKey@windowStartMs`. */
    static String window(String recordKey, long windowStart) {
        return recordKey + "@" + windowStart;
    }
}
