/* worker.h: placeholder, being written. */
#pragma once
