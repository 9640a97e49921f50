/* notify.h: placeholder, being written. */
#pragma once
